"""Mixture-reweighting methods: the baselines a reweighting study compares `curate reweight` with."""
