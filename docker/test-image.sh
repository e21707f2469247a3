#!/usr/bin/env bash
# Build the CPU component image with podman and run the library inside it, as its non-root user:
# synth -> ingest -> preprocess -> one-epoch train -> evaluate, then check the outputs and that no
# certificate or credential reached the image. CI runs it (`make image-test`); it needs root for debootstrap.
#
# No registry is reachable here, so the base is a stand-in built with debootstrap (Debian bookworm, python3.11);
# the package index sits behind a TLS-inspecting proxy, so the build mounts the machine's CA bundle read-only
# and points pip at it: a volume, never a layer.
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
image="localhost/cxr-bench:${version}-cpu"
base="localhost/cxr-base:bookworm"
ca_bundle=/etc/ssl/certs/ca-certificates.crt
export CONTAINERS_CONF="$PWD/docker/containers.conf"
step() { printf '\n== %s\n' "$*"; }

if ! command -v podman >/dev/null || ! command -v debootstrap >/dev/null || ! command -v runc >/dev/null; then
  step "installing podman, runc and debootstrap"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc debootstrap >/dev/null
fi

if ! podman image exists "$base"; then
  step "building the stand-in base image $base with debootstrap"
  mirror=$(sed -n 's/^URIs: //p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n 1)
  rootfs=$(mktemp -d)
  trap 'rm -rf "$rootfs"' EXIT
  debootstrap --variant=minbase --include=python3,python3-venv bookworm "$rootfs" "${mirror:-http://deb.debian.org/debian}" >/dev/null
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | podman import - "$base" >/dev/null
fi

step "building $image"
podman build -f docker/Dockerfile -t "$image" \
  --build-arg BASE_IMAGE="$base" --build-arg TF_VARIANT=cpu --build-arg VERSION="$version" \
  --build-arg PIP_CERT="$ca_bundle" --volume "$ca_bundle:$ca_bundle:ro" .

step "running the steps inside the image as its non-root user"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
chmod 777 "$work"
podman run --rm --volume "$work:/work" "$image" sh -ec '
  test "$(id -u)" = 1000
  cxr synth /work/synthetic --per-class 12 --min-size 64 --max-size 128
  cxr ingest --source /work/synthetic --out /work/raw
  cxr preprocess --raw /work/raw --out /work/processed --image-size 32 --val-fraction 0.2
  cxr train --data /work/processed --backbone MobileNet --out /work/model --epochs 1 --image-size 32 --weights none
  cxr evaluate --data /work/processed --model /work/model --out /work/result
'

step "checking the outputs"
for file in raw/ingest.json processed/manifest.csv processed/stats.json model/model.keras model/history.csv \
            model/train_metrics.json result/metrics.json result/predictions.csv result/roc.csv; do
  test -s "$work/$file" || { echo "missing or empty: $file" >&2; exit 1; }
done
ls "$work"/processed/train-*.tfrecord >/dev/null
python3 - "$work" <<'PY'
import json, sys
work = sys.argv[1]
metrics = json.load(open(f"{work}/model/train_metrics.json"))
assert metrics["epochs_run"] == 1 and metrics["device"] == "CPU", metrics
evaluation = json.load(open(f"{work}/result/metrics.json"))
assert evaluation["test_images"] > 0 and 0 <= evaluation["roc_auc"]["value"] <= 1, evaluation
print(f"inside the image: MobileNet trained 1 epoch on {metrics['train_images']} images, "
      f"evaluated on {evaluation['test_images']}")
PY

step "serving the trained model inside the image (cxr serve, the serve extra) and asking it over HTTP"
podman run --rm --volume "$work:/work" "$image" sh -ec '
  cxr serve --model /work/model --result /work/result --host 0.0.0.0 --port 8080 &
  server=$!
  python3 - <<"PY"
import base64, glob, json, time, urllib.request
for _ in range(180):
    try:
        urllib.request.urlopen("http://127.0.0.1:8080/v2/health/ready", timeout=2)
        break
    except OSError:
        time.sleep(1)
film = sorted(glob.glob("/work/raw/test/*/*.jpeg"))[0]
body = json.dumps({"instances": [{"b64": base64.b64encode(open(film, "rb").read()).decode()}]}).encode()
request = urllib.request.Request("http://127.0.0.1:8080/v1/models/cxr-pneumonia:predict", data=body,
                                 headers={"Content-Type": "application/json"})
[prediction] = json.load(urllib.request.urlopen(request, timeout=60))["predictions"]
assert 0 <= prediction["probability"] <= 1 and prediction["decision"] in ("NORMAL", "PNEUMONIA"), prediction
print(f"inside the image: cxr serve answered {prediction}")
PY
  kill -TERM "$server"
  wait "$server"
'

step "checking that no certificate or credential is in the image"
if podman run --rm "$image" cat "$ca_bundle" 2>/dev/null | cmp -s - "$ca_bundle"; then
  echo "the build machine's CA bundle is inside the image" >&2; exit 1
fi
if podman history --no-trunc --format '{{.CreatedBy}}' "$image" | grep -iE 'KAGGLE_KEY=|KAGGLE_API_TOKEN=|password'; then
  echo "a credential appears in the image history" >&2; exit 1
fi
podman image inspect --format '{{.Config.User}} {{index .Labels "org.opencontainers.image.version"}}' "$image"
echo "image test passed: $image"
