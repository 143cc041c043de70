#!/usr/bin/env bash
# `make image`: the CPU images, built with podman on a machine with no image registry
# (docs/operations.md, "Images"). Made once and reused: the Debian base (debootstrap +
# import) and every unchanged layer; a change to the source rebuilds only the last layers.
#
#   localhost/debian:bookworm-min   debootstrap --variant=minbase bookworm, imported
#   localhost/rnnlm-base-cpu        + Python 3.11 and CPU torch (docker/base-cpu.Dockerfile)
#   localhost/rnnlm-api             docker/api.Dockerfile on the CPU base
#   localhost/rnnlm-trainer         docker/trainer.Dockerfile on the CPU base
#   localhost/rnnlm-redis           Debian's redis-server (docker/redis.Dockerfile)
#   localhost/rnnlm-nginx           Debian's nginx (docker/nginx.Dockerfile)
#
# Needs podman, runc and debootstrap, and /etc/containers/containers.conf as .ci/run
# writes it. Only these images are named; nothing else is touched.
set -euo pipefail
cd "$(dirname "$0")/.."
ENGINE="${ENGINE:-podman}"
DEBIAN_IMAGE="${DEBIAN_IMAGE:-localhost/debian:bookworm-min}"
IMAGES="${IMAGES:-base api trainer redis nginx}"

if ! "$ENGINE" image exists "$DEBIAN_IMAGE"; then
    rootfs="$(mktemp -d /tmp/rnnlm-rootfs.XXXXXX)"
    trap 'rm -rf "$rootfs"' EXIT
    echo "==> $DEBIAN_IMAGE: debootstrap (once)"
    debootstrap --variant=minbase bookworm "$rootfs" >/dev/null
    tar -C "$rootfs" -c . | "$ENGINE" import - "$DEBIAN_IMAGE" >/dev/null
    rm -rf "$rootfs"
fi

# Build-time mounts, present only while a RUN step runs (nothing of them is kept): this
# machine's CA bundle, since outbound TLS is re-signed here, and the CPU torch wheel.
args=(build --format docker --network host)
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
    args+=(-v /etc/ssl/certs/ca-certificates.crt:/host-ca.crt:ro --build-arg PIP_CERT=/host-ca.crt)
fi
torch=()
wheel="$(ls /opt/wheels/torch-*+cpu-*.whl 2>/dev/null | head -1 || true)"
if [ -n "$wheel" ]; then
    # The file itself, not a requirement: pip must not find a newer (CUDA) torch on PyPI.
    args+=(-v /opt/wheels:/wheels:ro)
    torch=(--build-arg "TORCH=/wheels/$(basename "$wheel")")
fi

build() {  # name, dockerfile, extra args...
    local name="$1" file="$2"
    shift 2
    echo "==> localhost/$name"
    local start=$SECONDS
    "$ENGINE" "${args[@]}" "$@" -f "$file" -t "localhost/$name" . >"/tmp/rnnlm-image-$name.log" 2>&1 || {
        tail -30 "/tmp/rnnlm-image-$name.log" >&2
        echo "build of $name failed (log: /tmp/rnnlm-image-$name.log)" >&2
        exit 1
    }
    echo "    $((SECONDS - start)) s"
}

for image in $IMAGES; do
    case "$image" in
        base) build rnnlm-base-cpu docker/base-cpu.Dockerfile --build-arg "DEBIAN=$DEBIAN_IMAGE" "${torch[@]}" ;;
        api) build rnnlm-api docker/api.Dockerfile --build-arg BASE=localhost/rnnlm-base-cpu ;;
        trainer) build rnnlm-trainer docker/trainer.Dockerfile --build-arg BASE=localhost/rnnlm-base-cpu ;;
        redis) build rnnlm-redis docker/redis.Dockerfile --build-arg "DEBIAN=$DEBIAN_IMAGE" ;;
        nginx) build rnnlm-nginx docker/nginx.Dockerfile --build-arg "DEBIAN=$DEBIAN_IMAGE" ;;
        *) echo "unknown image $image" >&2; exit 2 ;;
    esac
done
"$ENGINE" images --filter reference='localhost/rnnlm-*' --format '{{.Repository}} {{.Size}}'
