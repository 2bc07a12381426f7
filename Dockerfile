# Multi-stage build of the agent image: a Rust builder (stable for the agent, nightly + rust-src +
# bpf-linker for the eBPF programs, all installed by the project's own build.rs), then a slim runtime.
FROM rust:1.95-bookworm AS build
RUN rustup toolchain install nightly --profile minimal --component rust-src
WORKDIR /src
COPY . .
RUN cargo build --release --package gateway-agent \
 && cp target/release/gateway-agent /gateway-agent

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates iproute2 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /gateway-agent /usr/local/bin/gateway-agent
USER 0
ENTRYPOINT ["/usr/local/bin/gateway-agent"]
