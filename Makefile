# Two commands do everything on a fresh machine:
#   make demo   install, then export the reference DCGAN, verify it against torch, sample a PNG grid
#   make test   install, then run the test suite (make test-slow: the long parity fuzz)
VENV  ?= .venv
PY    := $(VENV)/bin/python
# torch is installed first, pinned to the CPU build this project is developed on; pyproject only
# asks torch>=2.4, so elsewhere `pip install deploykit[export]` takes whatever torch you have.
TORCH ?= torch==2.13.0

.PHONY: install demo test test-slow bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

demo: install
	$(VENV)/bin/deploykit export zoo:dcgan --out bundles/dcgan --force
	$(VENV)/bin/deploykit verify bundles/dcgan
	$(VENV)/bin/deploykit sample bundles/dcgan --n 64 --seed 0 --out out/dcgan.png

test: install
	$(PY) -m pytest

test-slow: install
	$(PY) -m pytest -m slow

bench: install
	$(PY) benchmarks/profile_zoo.py
	$(PY) benchmarks/recurrent_loops.py
	$(PY) benchmarks/transformer_generation.py
	$(PY) benchmarks/autoregressive_sampling.py
	$(PY) benchmarks/flow_sampling.py
	$(PY) benchmarks/diffusion_sampling.py

clean:
	rm -rf $(VENV) bundles out runs
