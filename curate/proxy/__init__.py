"""The check every application shares: retrain a proxy model on a dataset, then evaluate it with lm-eval.

    retrain.py   train_proxy: a fresh copy of a base model's architecture, trained from scratch on a dataset
    evaluate.py  evaluate_models: lm-eval on offline task YAMLs, a tidy table and a comparison report
"""
