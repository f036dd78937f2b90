# `make demo` and `make test` do all the set-up on a fresh machine, then run.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TUXPAINT := datasets/tuxpaint/dataset_tuxpaint.json
export HF_HUB_OFFLINE := 1

.PHONY: venv data demo test clean-runs

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

demo: venv data
	$(PY) buffer.py --config configs/tuxpaint/buffer.yaml
	$(PY) evaluate.py --config configs/tuxpaint/buffer.yaml --expert runs/tuxpaint/buffer/expert_000.safetensors

test: venv data
	$(PY) -m pytest -q tests

clean-runs:
	rm -rf runs/tuxpaint
