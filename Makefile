# The two set-up commands are `make demo` and `make test`; each creates .venv and installs what it needs.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo demo-run demo-predict quickstart test test-bench bench fuzz lint docs install clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# the shipped teacher + distilled student -> INT8 PTQ (+ a pruned branch) -> ONNX -> bench on held-out
# test images, then the deployed model's detections on a few of them (runs/demo_predictions/*.png: the file
# the deploy stage chose, boxes drawn at the score maximising F1 on val; the threshold is in predict.json)
demo: demo-run demo-predict

demo-run: $(STAMP)
	$(BIN)/compressdet run recipes/demo.yaml

demo-predict: $(STAMP)
	$(BIN)/compressdet predict split:test --runs-root runs --stage deploy --max-images 4 \
		--out runs/demo_predictions

# the whole chain from scratch (teacher training included), a few minutes, near-zero mAP
quickstart: $(STAMP)
	$(BIN)/compressdet run recipes/quickstart.yaml

# tests keep torch to one thread each, so one pytest worker per core (files stay whole on one worker,
# so module fixtures are built once); TEST_WORKERS=0 runs them in this process
TEST_WORKERS ?= auto
test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --maxprocesses 4 --dist loadfile $(PYTEST_ARGS)

test-bench: $(STAMP)
	$(BIN)/python -m pytest -q -m bench_smoke $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

# property-based fuzzing of every parser (tests/test_fuzz_*.py) at FUZZ_EXAMPLES examples per target
# (hours on one core); writes benchmarks/results/fuzz.json (examples and failures per target)
FUZZ_EXAMPLES ?= 100000
fuzz: $(STAMP)
	$(BIN)/python benchmarks/fuzz.py --examples $(FUZZ_EXAMPLES) --chunk 5000

lint: $(STAMP)
	$(BIN)/ruff check compressdet tests benchmarks docs/hooks.py

# the documentation site (mkdocs.yml, docs/) into site/; --strict: a broken link or reference fails
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

clean:
	rm -rf $(VENV) runs build site *.egg-info
