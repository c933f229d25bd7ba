"""Optuna tuning: the search space from params, seeded TPE, pruning on the per-epoch
validation metric, a resumable study shared by any number of worker processes, and one
MLflow child run per trial under one parent run per study.

By concern:
- `study`: the study's name (a fingerprint), its MLflow parent run, warm start and outcome
  (`run_study`, the entry point);
- `trials`: what a trial trains and reports, the sampler and the pruner;
- `storage`: the journal file or RDB storage, and the trials dead workers left RUNNING;
- `workers`: the processes that run trials, this one or spawned ones.
"""
