# cxr-bench: compare ImageNet CNN backbones on chest X-rays, on a laptop (kfp.local) or a Kubernetes cluster.
# `make help` lists the targets. Every target that needs Python installs the virtualenv first, by itself.

SHELL := /bin/bash
VENV ?= .venv
PYTHON := $(VENV)/bin/python
# Tools from the venv first (ruff, pytest, cxr, gcp-storage-emulator); the local runner starts `python3`.
export PATH := $(abspath $(VENV))/bin:$(PATH)
export TF_CPP_MIN_LOG_LEVEL ?= 2

.DEFAULT_GOAL := help
.PHONY: help install test test-slow lint demo synth serve bench gpu-wheels compile weights images push \
  image-test cluster deploy load run upload ui down

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

install: $(VENV)/.installed ## create .venv with the project, TensorFlow (CPU), KServe (cxr serve) and the test tools

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -e ".[cpu,dev,serve]"
	touch $@

# Tests run on TEST_WORKERS processes (pytest-xdist). Much of a test's time is single-threaded (Python, graph
# tracing, a subprocess importing TensorFlow): on 2 cores, two workers run the default tier about 1.4x faster than
# one process (tests/README.md). The default tier hands out whole files, so that a module's shared training is made
# once; the slow tier, a few long tests, hands out single tests, so that its longest file does not leave a worker
# idle (the trainings its tests share are made once for both workers: made_once in tests/conftest.py). The slowest
# tests are listed at the end, so that a test that grew shows up where its cost is paid.
TEST_WORKERS ?= 2
PYTEST := $(PYTHON) -m pytest -n $(TEST_WORKERS) --durations=15

test: install ## the test suite without its slow tier (TensorFlow on tiny data, KFP local runner, GCS emulator)
	$(PYTEST) --dist loadfile

test-slow: install ## the slow tier only: tests marked slow (every backbone through the GPU benchmark's smoke run)
	$(PYTEST) --dist load -m slow

lint: install ## ruff
	$(VENV)/bin/ruff check .

synth: install ## write a synthetic dataset to runs/synthetic (small films, for trying the CLI)
	$(VENV)/bin/cxr synth runs/synthetic --per-class 100 --min-size 256 --max-size 512

demo: install ## the whole pipeline on synthetic data through KFP's local runner; prints where the report is
	$(PYTHON) -m pipelines.local_demo --out runs/demo-$$(date +%Y%m%d-%H%M%S)

# `make serve MODEL=runs/MobileNet [RESULT=runs/MobileNet-eval] [SERVE_HOST=0.0.0.0] [SERVE_PORT=8081]`: the
# threshold comes from RESULT's metrics.json (default: MODEL's own); host and port default as in cxr/settings.py
# (127.0.0.1:8080). Ctrl-C stops it.
MODEL ?=
RESULT ?=
SERVE_HOST ?=
SERVE_PORT ?=
serve: install ## serve MODEL=DIR (a `cxr train` folder) on 127.0.0.1:8080, KServe REST v1 and v2 (README, Serving)
	$(if $(MODEL),,$(error MODEL=DIR is required: the --out folder of `cxr train`))
	$(VENV)/bin/cxr serve --model "$(MODEL)" $(if $(RESULT),--result "$(RESULT)") \
	  $(if $(SERVE_HOST),--host $(SERVE_HOST)) $(if $(SERVE_PORT),--port $(SERVE_PORT))

bench: install ## the CPU benchmarks, each against a baseline in the same run (docs/performance.md; 5 min on 2 cores)
	bash benchmarks/cpu_bench.sh

# What keras imports, for a GPU machine without internet that has Python 3.12 and JAX but no Keras: the
# versions tested here (pyproject.toml's ranges). ml_dtypes and numpy come with JAX, h5py is there. keras-hub (the
# DINOv2 and MedSigLIP backbones) imports regex and tokenizers too; unpacked without their own dependencies, as
# gpu_run.sh does, they built both backbones on JAX here.
GPU_WHEELS ?= keras==3.15.1 namex==0.1.0 optree==0.20.0 absl-py==2.5.1 rich==15.0.0 markdown-it-py==4.3.0 \
  mdurl==0.1.2 pygments==2.21.0 packaging==26.4 typing-extensions==4.16.0 keras-hub==0.32.0 \
  regex==2026.11.19 tokenizers==0.23.3

# Any pip will do (no venv needed): the wheels are for the GPU machine's Python 3.12, not this one's.
gpu-wheels: ## download into .gpu-wheels the wheels benchmarks/gpu_run.sh carries to a bare GPU machine
	python3 -m pip download --quiet --no-deps --python-version 3.12 --only-binary=:all: --dest .gpu-wheels \
	  $(GPU_WHEELS)

# Compile-time settings of the pipeline YAML (defaults as in cxr/settings.py); override on the command line.
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
IMAGE_REPO ?= localhost/cxr-bench
# `make push REGISTRY=...` tags the images as REGISTRY/cxr-bench; with REGISTRY set, compile and deploy use those.
REGISTRY ?=
PUSH_REPO = $(REGISTRY)/$(notdir $(IMAGE_REPO))
IMAGE ?= $(if $(REGISTRY),$(PUSH_REPO),$(IMAGE_REPO)):$(VERSION)-gpu
PARALLELISM ?= 5
GPU_NODE_SELECTOR ?= nvidia.com/gpu.present=true
CHECKPOINT_PVC ?= cxr-checkpoints

compile: install ## compile pipelines/chest_xray_benchmark.yaml, the file to upload in the KFP UI
	CXR_IMAGE=$(IMAGE) CXR_PARALLELISM=$(PARALLELISM) CXR_GPU_NODE_SELECTOR=$(GPU_NODE_SELECTOR) \
	CXR_CHECKPOINT_PVC=$(CHECKPOINT_PVC) $(PYTHON) -m pipelines.chest_xray_benchmark

# --- Containers and the cluster path (README, "The cluster path") -------------------------------------------

# docker where an engine answers, else podman.
CONTAINER ?= $(shell docker info >/dev/null 2>&1 && echo docker || echo podman)
BASE_IMAGE ?= python:3.11-slim-bookworm

# The Keras backend the GPU image trains with: tensorflow, or jax (JAX on the GPU, TensorFlow-CPU for tf.data).
KERAS_BACKEND ?= tensorflow

# A folder of the backbones' pretrained weights (`make weights DIR=...`) to bake into the images; empty: none.
WEIGHTS ?=

# The keras.applications files, and each keras-hub backbone's preset in DIR/<preset>/ (through kagglehub: Kaggle
# credentials in the environment, MedSigLIP's licence accepted on Kaggle; docs/backbones.md).
weights: install ## download every backbone's pretrained weights into DIR (needs internet); then make images WEIGHTS=DIR
	$(if $(DIR),,$(error DIR must name the folder to download the pretrained weights into: make weights DIR=weights))
	$(PYTHON) -m cxr.training.weights --out $(DIR)

# With WEIGHTS, docker/Dockerfile.weights adds the files on top of each variant, the folder as its build context.
images: ## build the component image, GPU and CPU (tags VERSION-gpu, -cpu); KERAS_BACKEND=jax; WEIGHTS=DIR bakes them in
	$(if $(WEIGHTS),$(if $(wildcard $(WEIGHTS)/.),,$(error WEIGHTS=$(WEIGHTS) is not a folder; make weights DIR=$(WEIGHTS) \
	  downloads the files into one)))
	for variant in gpu cpu; do \
	  $(CONTAINER) build -f docker/Dockerfile --build-arg BASE_IMAGE=$(BASE_IMAGE) \
	    --build-arg TF_VARIANT=$$variant --build-arg KERAS_BACKEND=$(KERAS_BACKEND) --build-arg VERSION=$(VERSION) \
	    -t $(IMAGE_REPO):$(VERSION)-$$variant . || exit 1; \
	  $(if $(WEIGHTS),$(CONTAINER) build -f docker/Dockerfile.weights \
	    --build-arg IMAGE=$(IMAGE_REPO):$(VERSION)-$$variant -t $(IMAGE_REPO):$(VERSION)-$$variant $(WEIGHTS) || exit 1;) \
	done

push: ## tag the images as REGISTRY/cxr-bench and push them (REGISTRY=REGION-docker.pkg.dev/PROJECT/REPO)
	$(if $(REGISTRY),,$(error REGISTRY must name the registry to push to, e.g. make push \
	  REGISTRY=europe-west4-docker.pkg.dev/PROJECT/REPO))
	for variant in gpu cpu; do \
	  $(CONTAINER) tag $(IMAGE_REPO):$(VERSION)-$$variant $(PUSH_REPO):$(VERSION)-$$variant && \
	  $(CONTAINER) push $(PUSH_REPO):$(VERSION)-$$variant || exit 1; \
	done
	@echo "pushed $(PUSH_REPO):$(VERSION)-gpu and -cpu; make compile REGISTRY=$(REGISTRY) builds the pipeline on them"

image-test: ## build the CPU image with podman on a debootstrap base and run the steps inside it (root; CI)
	bash docker/test-image.sh

CLUSTER ?= cxr
KFP_VERSION ?= 2.17.0
# The newest 0.20.x; its values keep the meaning the time-slicing values and the kind GPU worker rely on
# (docs/decisions.md, "The device plugin chart").
DEVICE_PLUGIN_VERSION ?= 0.20.0
KFP_MANIFESTS := github.com/kubeflow/pipelines/manifests/kustomize
KFP_HOST ?= http://localhost:8080
# Train tasks that share one GPU (the device plugin's time-slicing); 1 = each task has a GPU to itself.
GPU_SHARING ?= 1
# Time-slicing values only for N > 1: the device plugin refuses fewer than 2 replicas.
DEVICE_PLUGIN_VALUES = $(if $(filter-out 1,$(GPU_SHARING)),--values <(sed 's/@GPU_SHARING@/$(GPU_SHARING)/' \
  k8s/device-plugin/time-slicing.values.yaml.tmpl))
# Pipeline arguments for `make run`, as NAME=VALUE words (values as JSON where they parse).
RUN_ARGS ?= source=kaggle

cluster: ## create the kind cluster, its GPU worker with the NVIDIA runtime as containerd's default (nvkind)
	k8s/kind/create-cluster.sh $(CLUSTER) k8s/kind/cluster.yaml.tmpl $(GPU_NODE_SELECTOR)

# --reset-values: an upgrade without values would otherwise keep the last release's (time-slicing after N > 1).
deploy: install ## device plugin (GPU_SHARING=N tasks per GPU), KFP 2.17, the overlay, Kaggle secret; waits until ready
	$(if $(shell [[ '$(GPU_SHARING)' =~ ^[1-9][0-9]*$$ ]] && echo ok),,$(error GPU_SHARING must be a whole \
	  number >= 1 (train tasks per GPU), got '$(GPU_SHARING)'))
	helm repo add nvdp https://nvidia.github.io/k8s-device-plugin --force-update
	helm upgrade -i nvidia-device-plugin nvdp/nvidia-device-plugin --version $(DEVICE_PLUGIN_VERSION) \
	  --namespace nvidia --create-namespace --reset-values $(DEVICE_PLUGIN_VALUES) --wait
	kubectl apply -k "$(KFP_MANIFESTS)/cluster-scoped-resources?ref=$(KFP_VERSION)"
	kubectl wait --for condition=established --timeout=120s crd/applications.app.k8s.io
	kubectl apply -k "$(KFP_MANIFESTS)/env/platform-agnostic?ref=$(KFP_VERSION)"
	kubectl apply -k k8s/overlays/kind
	$(VENV)/bin/cxr kaggle-secret --namespace kubeflow
	$(VENV)/bin/cxr cluster-ready --namespace kubeflow --image $(IMAGE)

# Through an archive: `kind load docker-image` fails on Docker's containerd image store (kind#3795), and it would
# copy the image to the control plane too, where no task runs.
load: ## load the GPU image into the kind cluster's workers
	archive=$$(mktemp --suffix=.tar) && trap 'rm -f "$$archive"' EXIT && \
	$(CONTAINER) save -o "$$archive" $(IMAGE) && \
	kind load image-archive "$$archive" --name $(CLUSTER) \
	  --nodes "$$(kind get nodes --name $(CLUSTER) | grep -v -- -control-plane | paste -sd, -)"

ui: ## forward the KFP UI and API to localhost:8080
	kubectl port-forward -n kubeflow svc/ml-pipeline-ui 8080:80

run: compile ## submit the pipeline to KFP_HOST with RUN_ARGS, wait, print the run's URL and final state
	$(VENV)/bin/cxr submit --host $(KFP_HOST) --package pipelines/chest_xray_benchmark.yaml \
	  $(foreach arg,$(RUN_ARGS),--arg $(arg))

upload: compile ## upload the compiled YAML to KFP_HOST as a new pipeline version
	$(VENV)/bin/cxr upload --host $(KFP_HOST) --package pipelines/chest_xray_benchmark.yaml

down: ## delete the kind cluster
	kind delete cluster --name $(CLUSTER)
