"""A process that writes trials into a local sweep study as fast as it can (for tests).

python -m tests.journal_writer FOLDER N
"""

import sys
from pathlib import Path

import optuna

from cnnlab.sweeps.storage import open_storage

if __name__ == "__main__":
    folder, n = Path(sys.argv[1]), int(sys.argv[2])
    storage = open_storage(None, folder, heartbeat=1)
    study = optuna.load_study(study_name="s", storage=storage)
    study_id = storage.get_study_id_from_name("s")
    for _ in range(n):
        trial = study.ask()
        storage.record_heartbeat(
            storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        )
        study.tell(trial, trial.suggest_float("x", 0, 1))
