# The two commands of the README:
#   make demo   set up (if needed), make the synthetic DIOR data, run teacher -> amplifier -> student alone ->
#               DS2D2 student on CPU and print the per-stage table
#   make test   set up (if needed), then run the test suite
# Set-up is idempotent: tools/setup_env.sh runs again only when it or the files it reads changed.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ds2d2-setup
DEMO_DATA := datasets/synthetic_dior
DEMO_OUT := output/demo

.PHONY: setup test demo clean-demo

setup: $(STAMP)

$(STAMP): tools/setup_env.sh tools/install_detectron2.py setup.cfg pyproject.toml
	bash tools/setup_env.sh

test: setup
	$(PY) -m pytest -q

demo: setup
	$(PY) datasets/make_synthetic.py --format dior --out $(DEMO_DATA) --num-images 600 --seed 0
	DETECTRON2_DATASETS=datasets $(PY) tools/run_pipeline.py \
		--config configs/synthetic/retinanet_R50_to_R18.yaml \
		--amplifier-config configs/synthetic/retinanet_R50_amplifier.yaml --output $(DEMO_OUT)

clean-demo:
	rm -rf $(DEMO_OUT)
