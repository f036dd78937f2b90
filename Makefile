# `make demo` and `make test` do all the set-up on a fresh machine, then run.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TUXPAINT := datasets/tuxpaint/dataset_tuxpaint.json
export HF_HUB_OFFLINE := 1

.PHONY: venv data demo test clean-runs edge-demo

venv: $(VENV)/.installed
$(VENV)/.installed: requirements.txt requirements-offline.txt Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-offline.txt
	touch $@

data: $(TUXPAINT)
$(TUXPAINT): | $(VENV)/.installed
	$(PY) -m data.tuxpaint --out datasets/tuxpaint --cache .cache/tuxpaint

# experts → LoRS → fresh students on the distilled set and on as many random real pairs (the same budget)
demo: venv data
	$(PY) buffer.py --config configs/tuxpaint/buffer.yaml
	$(PY) evaluate.py --config configs/tuxpaint/buffer.yaml --expert runs/tuxpaint/buffer/expert_000.safetensors
	$(PY) distill.py --config configs/tuxpaint/lors.yaml
	$(PY) coreset.py --config configs/tuxpaint/buffer.yaml --method random --budget 50 --out runs/tuxpaint/random_50.safetensors --overwrite
	$(PY) evaluate.py --config configs/tuxpaint/lors.yaml --out runs/tuxpaint/demo_results.json \
	  --distilled runs/tuxpaint/lors_50/distilled.safetensors runs/tuxpaint/random_50.safetensors

# the optional extras are installed for the tests that read TensorBoard logs and load exports with `datasets`, and
# import-linter checks the layering
EXTRAS := $(VENV)/.extras
$(EXTRAS): requirements-extras.txt | $(VENV)/.installed
	$(PY) -m pip install --quiet -r requirements-extras.txt
	touch $@

# the import layering (.importlinter: common < data < networks < training < artefacts < evaluation < methods, no
# cycles) is part of the suite
test: venv data $(EXTRAS)
	$(VENV)/bin/lint-imports --no-cache
	$(PY) -m pytest -q tests

clean-runs:
	rm -rf runs/tuxpaint

# EDGE pipeline check: tiny random diffusion/CLIP/captioner models (a check of the path, not a quality result)
TINY_EDGE := runs/tuxpaint/tiny-edge/generator/unet/config.json
$(TINY_EDGE): | $(VENV)/.installed
	$(PY) -m networks.tiny runs/tuxpaint/tiny-edge
edge-demo: venv data $(TINY_EDGE)
	PYTHON=$(PY) sh/edge.sh tuxpaint 50
