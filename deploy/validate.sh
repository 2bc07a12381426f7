#!/usr/bin/env bash
# Renders deploy/daemonset with kustomize (kubectl) and validates the built-in kinds against the
# Kubernetes OpenAPI schemas with kubernetes-validate (PyPI). GatewayClass has no built-in schema
# and is reported as skipped. Not part of `cargo xtask test` (it needs kubectl and the PyPI package).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
for tool in kubectl kubernetes-validate; do
  command -v "$tool" >/dev/null 2>&1 || {
    echo "deploy/validate.sh: missing $tool (kubernetes-validate: pip install kubernetes-validate)" >&2
    exit 1
  }
done
rendered="$(mktemp --suffix .yaml)"
trap 'rm -f "$rendered"' EXIT
kubectl kustomize "$here/daemonset" >"$rendered"
kubernetes-validate --strict -k "${KUBERNETES_VERSION:-1.33.0}" "$rendered"
