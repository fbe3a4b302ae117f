# octswap: `make run` converts resnet50 on random weights; `make test` runs the tests.
# Both build (or refresh) the virtual environment in .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
OUT ?= out

.PHONY: run test test-slow zoo-test zoo-timm bench bench-fidelity bench-training bench-onnxruntime bench-tune bench-tune-onnxruntime bench-tune-data bench-dense bench-dense-detection venv clean

venv: $(STAMP)

# Re-install when the project's dependencies change. pip takes torch/torchvision from
# this machine's local wheel store where one is configured (no pinning newer than it has).
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# Benchmarks that train on real digits also need the dev extra (scikit-learn).
$(DEV_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test,dev]'
	touch $(DEV_STAMP)

run: $(STAMP)
	mkdir -p $(OUT)
	$(BIN)/octswap convert resnet50 --alpha 0.25 --no-layers --output $(OUT)/resnet50-oct0.25.pt --force

test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" -n auto --dist loadfile

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow -n auto --dist loadfile

# The whole torchvision classification zoo in both modes, big models included, and at every
# tested input size (~1 h on 2 cores).
zoo-test: $(STAMP)
	$(BIN)/python -m pytest -q tests/test_convert.py -k zoo

# One timm model per family (configs/zoo-timm.yaml, ~11 min on 2 cores): the README's table.
# Resumes where a previous run stopped.
zoo-timm: $(STAMP)
	$(BIN)/octswap zoo configs/zoo-timm.yaml --out zoo-timm --jobs 2 --resume > /dev/null; status=$$?; \
	$(BIN)/python benchmarks/timm_families.py table zoo-timm/results.json && exit $$status

bench: $(DEV_STAMP)
	$(BIN)/python benchmarks/bench_convert.py
	$(BIN)/python benchmarks/bench_octresnet.py
	$(BIN)/python benchmarks/bench_latency.py
	$(BIN)/python benchmarks/bench_fidelity.py
	$(BIN)/python benchmarks/bench_training.py
	$(BIN)/python benchmarks/bench_onnxruntime.py
	$(BIN)/python benchmarks/bench_tune.py
	$(BIN)/python benchmarks/bench_dense.py --task segmentation

# octswap tune on densenet121, mobilenet_v2 (fastest) and resnet50 (latency 0.65), each policy
# timed in 3 fresh processes (~40 min on 2 cores; measurements cached in /tmp/octswap-tune).
bench-tune: $(STAMP)
	$(BIN)/python benchmarks/bench_tune.py

# The same for ONNX Runtime: mobilenet_v2 tuned and timed in ONNX Runtime sessions (octswap[export]).
bench-tune-onnxruntime: $(STAMP)
	$(BIN)/python benchmarks/bench_tune.py --runtime onnxruntime --models mobilenet_v2

# octswap tune with data: resnet18 trained on real digits at 128x128, tuned at three latency
# targets against every uniform alpha (agreement after BN re-estimation, latency side by side),
# the middle one healed 3 epochs (files in /tmp/octswap-tune-data).
bench-tune-data: $(DEV_STAMP)
	$(BIN)/python benchmarks/bench_tune_data.py

# Latency under ONNX Runtime, original vs converted, both exported alike (~25 min on 2 cores).
bench-onnxruntime: $(STAMP)
	$(BIN)/python benchmarks/bench_onnxruntime.py

# Accuracy of converted, BatchNorm-re-estimated and healed models on real digits (~35 min).
bench-fidelity: $(DEV_STAMP)
	$(BIN)/python benchmarks/bench_fidelity.py

# Segmentation on scenes of real digits: train (24 epochs of ~55 s per seed on 2 cores), convert at
# 0.25/0.5, BN re-estimate, heal 3 epochs, 3 seeds (files in /tmp/octswap-dense; trained weights are
# reused). The detector: bench-dense-detection.
bench-dense: $(DEV_STAMP)
	$(BIN)/python benchmarks/bench_dense.py --task segmentation

bench-dense-detection: $(DEV_STAMP)
	$(BIN)/python benchmarks/bench_dense.py --task detection --seeds 0 --epochs 20

# Training speed of a heal step vs fine-tuning the original (ResNet-50, batch 32, ~5 min).
bench-training: $(STAMP)
	$(BIN)/python benchmarks/bench_training.py

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache .hypothesis
