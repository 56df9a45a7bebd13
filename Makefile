# Two commands do everything on a fresh machine:
#   make demo   install, then export the reference DCGAN, verify it against torch, sample a PNG grid
#   make test   install, then run the test suite (make test-slow: the long parity fuzz)
VENV  ?= .venv
PY    := $(VENV)/bin/python
# torch is installed first, pinned to the CPU build this project is developed on; pyproject only
# asks torch>=2.4, so elsewhere `pip install deploykit[export]` takes whatever torch you have.
TORCH ?= torch==2.13.0

TRITON_VENV ?= .venv-triton
PEERS_VENV ?= .venv-peers

.PHONY: install triton-env peers-env demo test test-slow bench bench-hf bench-diffusers bench-triton clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

# Triton Inference Server 2.51 (the binary in the nvidia-pytriton wheel) pins numpy<2: its own venv,
# with deploykit (no torch) for the Python-backend models and tritonclient for the load test.
triton-env: $(TRITON_VENV)/.installed

$(TRITON_VENV)/.installed: pyproject.toml
	python3 -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/pip install -q --upgrade pip
	$(TRITON_VENV)/bin/pip install -q nvidia-pytriton "tritonclient[http]" -e .
	touch $@

# The peers `make bench-hf` measures against: optimum-onnx pins transformers<4.58, so its own venv (deploykit's
# torch-free runtime joins it through PYTHONPATH); onnxruntime-genai's builder needs transformers 5: in .venv.
peers-env: $(PEERS_VENV)/.installed

$(PEERS_VENV)/.installed: pyproject.toml
	python3 -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/pip install -q "$(TORCH)"
	$(PEERS_VENV)/bin/pip install -q "optimum-onnx[onnxruntime]" onnxruntime-genai onnxscript tokenizers
	$(PY) -m pip install -q onnxruntime-genai
	touch $@

demo: install
	$(VENV)/bin/deploykit export zoo:dcgan --out bundles/dcgan --force
	$(VENV)/bin/deploykit verify bundles/dcgan
	$(VENV)/bin/deploykit sample bundles/dcgan --n 64 --seed 0 --out out/dcgan.png

# one pytest worker per core of the 2-core machine the suite is sized on (more cores: make test TEST_WORKERS=4);
# workers share the trained zoo and its exported bundles (tests/conftest.py)
TEST_WORKERS ?= 2
test: install triton-env
	$(PY) -m pytest -n $(TEST_WORKERS) --dist worksteal

test-slow: install
	$(PY) -m pytest -m slow

bench: install
	$(PY) benchmarks/profile_zoo.py
	$(PY) benchmarks/recurrent_loops.py
	$(PY) benchmarks/transformer_generation.py
	$(PY) benchmarks/autoregressive_sampling.py
	$(PY) benchmarks/flow_sampling.py
	$(PY) benchmarks/diffusion_sampling.py
	$(PY) benchmarks/diffusion_samplers.py
	$(PY) benchmarks/loop_glue.py

bench-hf: install peers-env
	$(PY) benchmarks/hf_language_models.py
	cd benchmarks && ../$(PY) hf_seq2seq.py

bench-diffusers: install
	$(PY) benchmarks/diffusers_pipelines.py
	cd benchmarks && ../$(PY) text_to_image.py

bench-triton: install triton-env
	$(VENV)/bin/deploykit export zoo:cgan --out bundles/cgan --force
	$(VENV)/bin/deploykit export zoo:ddpm-digits --out bundles/ddpm --force
	$(TRITON_VENV)/bin/python benchmarks/triton_serving.py --generator bundles/cgan --loop bundles/ddpm

clean:
	rm -rf $(VENV) $(TRITON_VENV) $(PEERS_VENV) bundles out runs
