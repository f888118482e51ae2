"""Sweeps: `jobs` (Job, job lists and their state), `run_job` (one job in this process), `launchers`
(running many jobs), `spec` (sweep spec files, and the TOML/JSON reader the recycle spec uses too).
Layering: spec -> launchers -> run_job -> jobs.
"""

from domainbed_recycle.sweep.jobs import (
    DIVERGED,
    DONE,
    INCOMPLETE,
    NOT_LAUNCHED,
    STATES,
    UNHASHED_ARGS,
    Job,
    changed_hparams,
    dataset_environments,
    delete_incomplete,
    delete_jobs,
    folder_status,
    format_status,
    job_id_of,
    job_state,
    jobs_from_configs,
    make_jobs,
    status,
    test_env_combinations,
    train_config_fields,
)
from domainbed_recycle.sweep.launchers import (
    DIVERGED_OUTCOME,
    FAILED,
    LAUNCHERS,
    RAN,
    SKIPPED,
    JobOutcome,
    LaunchReport,
    SlurmOptions,
    launch,
    run_job,
)
from domainbed_recycle.sweep.spec import (
    SLURM_KEYS,
    SPEC_KEYS,
    SweepSpec,
    load_spec,
    read_spec_file,
    spec_from_dict,
)

__all__ = [
    "DIVERGED", "DIVERGED_OUTCOME", "DONE", "FAILED", "INCOMPLETE", "LAUNCHERS", "NOT_LAUNCHED", "RAN",
    "SKIPPED", "SLURM_KEYS",
    "SPEC_KEYS", "STATES", "UNHASHED_ARGS", "Job", "JobOutcome", "LaunchReport", "SlurmOptions",
    "SweepSpec", "changed_hparams", "dataset_environments", "delete_incomplete", "delete_jobs", "folder_status",
    "format_status", "job_id_of",
    "job_state", "jobs_from_configs", "launch", "load_spec", "make_jobs", "read_spec_file",
    "run_job", "spec_from_dict", "status", "test_env_combinations", "train_config_fields",
]
