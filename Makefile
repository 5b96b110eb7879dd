# make setup   virtual environment with the pinned dependencies, and pycaffe built into ~/.cache/segbench
# make demo    setup, then the workflow on the bundled demo (config.yaml)
# make test    setup, then the test suite
# make voc2012 setup, download VOC2012 and FCN-8s, score FCN-8s on seg11valid
# make torch   setup, plus the optional torch backend (requirements-torch.txt; CI installs it)
# make caffe-cuda-check  compile Caffe's CUDA build (with and without cuDNN) against PyPI's
#              CUDA 13 wheels; needs no GPU (tools/caffe/cuda-compile-check.sh)
# make gpu-carry  what the project's bare, offline GPU machine needs for tools/gpu/proof.sh:
#              .gpu-wheels (tools/gpu/wheels.sh) and .gpu-caffe (tools/gpu/caffe-bundle.sh; needs a
#              python3.12, about 20 minutes on 2 cores the first time)

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test torch voc2012 caffe-cuda-check gpu-carry clean

setup: $(VENV)/.requirements-installed
	tools/caffe/build.sh $(BIN)/python

$(VENV)/.requirements-installed: requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || { \
	  echo "installing python3-venv (Debian's python3 needs it for venv)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv python3-dev >/dev/null && \
	  rm -rf $(VENV) && $(PYTHON) -m venv $(VENV); }
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

# torch is an extra: PyPI's torch is a CUDA build of several GB, which only GPU users want.
torch: setup $(VENV)/.torch-installed

$(VENV)/.torch-installed: requirements-torch.txt $(VENV)/.requirements-installed
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-torch.txt
	touch $@

demo: setup
	$(BIN)/snakemake --cores 4

# The report test opens the HTML report in Debian's Chromium (headless).
test: setup
	command -v chromium >/dev/null || { apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }
	$(BIN)/python -m pytest -q tests

# FCN-8s on VOC2012 seg11valid: downloads about 2.5 GB once, then scores 736 images.
voc2012: setup
	$(BIN)/snakemake --cores 4 --configfile config/voc2012-fcn8s.yaml fetch
	$(BIN)/snakemake --cores 4 --configfile config/voc2012-fcn8s.yaml

# About 20 minutes on 2 cores the first time; then seconds while build.sh and its patches
# are unchanged (--fresh in CUDA_CHECK_ARGS rebuilds). Leaves .venv and segbench's Caffe alone.
caffe-cuda-check: $(VENV)/.requirements-installed
	tools/caffe/cuda-compile-check.sh $(BIN)/python $(CUDA_CHECK_ARGS)

gpu-carry: $(VENV)/.requirements-installed
	tools/gpu/wheels.sh $(BIN)/python
	tools/gpu/caffe-bundle.sh
	@{ git ls-files -z | xargs -0 cat; cat .gpu-wheels/* .gpu-caffe/*; } | wc -c | \
	  awk '{printf "carry with the checkout: %.1f MiB (the device tool takes 64 MiB)\n", $$1 / 1048576}'

clean:
	rm -rf work results logs .snakemake report.html
