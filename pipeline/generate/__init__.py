"""The generate stage: candidate shards of (identity, variant) pairs, rendered and analysed on each device.

- `driver`: plans shards, keeps the valid ones, runs the executor, writes the candidate manifest;
- `worker`: the per-device job and worker (latent plan -> device pass -> encoding -> Parquet);
- `models`: one device's generator, face stack, estimators and encoder;
- `device_pass`: one batch of pairs -> candidate columns, with out-of-memory back-off;
- `records`: image encoding and the shard's Arrow table;
- `version`: what a shard's bytes depend on (params, calibration, models, GENERATION_VERSION).

The latent plans themselves (plain, separated, edited, steered) live in `pipeline.identities.plans`.
"""
