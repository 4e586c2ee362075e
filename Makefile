# Two entry points for a fresh clone: `make demo` and `make test`. Both create .venv when
# missing and (re)install the project when pyproject.toml changed; both are idempotent. The
# demo trains a head, so it installs the train extra (torch) besides the base install; the
# tests install every extra, and build a base install of their own (tests/test_base_install.py).
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO_STAMP := $(VENV)/.installed-demo
INDEX  := indexes/default

.PHONY: demo test install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[train,openvino,test,ray,map,lite2]'
	touch $(STAMP) $(DEMO_STAMP)

$(DEMO_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[train,openvino]'
	touch $(DEMO_STAMP)

install: $(STAMP)

demo: $(DEMO_STAMP)
	$(BIN)/imgembed index sample_images --index $(INDEX)
	$(BIN)/imgembed info --index $(INDEX)
	$(BIN)/imgembed search sample_queries/fish_altum_angelfish_01.png sample_queries/vehicles_1989_chevrolet_celebrit_01.png --index $(INDEX) -k 5
	$(BIN)/imgembed classify sample_queries/*.png --index $(INDEX)
	$(BIN)/imgembed compare sample_images/fruit/pear.png sample_images/fruit/pear_simple.png
	@echo "--- train a head on sample_images, index with it, classify the same queries ---"
	$(BIN)/imgembed train sample_images --out models/demo.pt --epochs 30 --cache .cache/features -q
	$(BIN)/imgembed index sample_images --index indexes/demo-trained --model models/demo.pt -q
	$(BIN)/imgembed classify sample_queries/*.png --index indexes/demo-trained

test: $(STAMP)
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) .cache models/demo.pt* indexes/default indexes/demo-trained
