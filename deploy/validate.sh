#!/usr/bin/env bash
# Validates deploy/daemonset against the Kubernetes OpenAPI schemas with kubernetes-validate
# (PyPI), strictly: unknown fields, wrong types and missing required fields fail. With kubectl
# the kustomization is rendered (kubectl kustomize) and the result validated; without it, each
# file the kustomization lists is validated as it is (the kustomization only sets the namespace,
# which the files already carry, and the image tag).
#
# GatewayClass (a CRD kind) has no built-in schema and is reported as skipped here; it is checked
# against gateway-api's types by `cargo test -p gateway-model --test manifests`. .ci/run runs both.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
command -v kubernetes-validate >/dev/null 2>&1 || {
  echo "deploy/validate.sh: missing kubernetes-validate (pip install kubernetes-validate)" >&2
  exit 1
}
kustomization="$here/daemonset/kustomization.yaml"
files=()
if command -v kubectl >/dev/null 2>&1; then
  rendered="$(mktemp --suffix .yaml)"
  trap 'rm -f "$rendered"' EXIT
  kubectl kustomize "$here/daemonset" >"$rendered"
  files=("$rendered")
else
  echo "deploy/validate.sh: no kubectl; validating the files $kustomization lists" >&2
  # The resources: list (one "- file" per line, as kustomization.yaml writes it).
  while read -r file; do
    [[ -f "$here/daemonset/$file" ]] || { echo "deploy/validate.sh: $file listed but missing" >&2; exit 1; }
    files+=("$here/daemonset/$file")
  done < <(sed -n '/^resources:/,/^[^- ]/s/^- *//p' "$kustomization")
  ((${#files[@]})) || { echo "deploy/validate.sh: no resources in $kustomization" >&2; exit 1; }
fi
# Every manifest in the directory must be part of the kustomization.
for f in "$here"/daemonset/*.yaml; do
  name="$(basename "$f")"
  [[ "$name" == kustomization.yaml ]] && continue
  grep -qx -- "- $name" "$kustomization" || {
    echo "deploy/validate.sh: $name is not listed in $kustomization" >&2
    exit 1
  }
done
kubernetes-validate --strict -k "${KUBERNETES_VERSION:-1.33.0}" "${files[@]}"
echo "deploy/validate.sh: manifests valid"
