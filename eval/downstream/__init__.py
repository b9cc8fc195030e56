"""The downstream harness: how well an exported tower's features transfer, beside a random-init twin.

``python -m eval.downstream --export RUN/export --task NAME`` reads a task (:mod:`data.downstream`),
extracts features with the tower (:mod:`eval.downstream.towers`), fits the probes
(:mod:`eval.downstream.probes`: linear, few-shot, k-NN; :mod:`eval.downstream.zeroshot` through the
text tower; :mod:`eval.downstream.finetune` trains the tower itself), and reports mean and standard
deviation over seeds as JSON, a markdown table and a PNG (:mod:`eval.downstream.report`).
"""
