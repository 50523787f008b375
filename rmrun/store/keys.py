"""Every state key and record name rmrun writes, defined once.

State keys (``states/<key>/``) are single path segments that sort in time order, so the
numbers in them are zero-padded; record names (``records/<name>.json``) may hold '/'.
"""

from __future__ import annotations

# ----------------------------------------------------------------- states

IDENTITY_KEY = "run-identity"  # what the run is: the result-changing recipe keys and their fingerprint
TOKENIZE_PREFIX = "tokenize-"  # + the data fingerprint: the tokenized data set, shared by runs that agree on it
TOKENIZE_PIECE_PREFIX = (
    "piece-"  # + the data key, split, piece and count: one finished piece of it (deleted once it is whole)
)
SCORED_PREFIX = "scored-"  # + what and the step, the piece: eval sums of a piece of the final eval or reward stats
EPOCH_PREFIX = "epoch-"  # + the epoch: that epoch was trained to its end
CHECKPOINT_PREFIX = "ckpt-"  # + the step: model, optimizer and trainer state
HISTORY_PREFIX = "history-"  # + the last step: the metric lines since the previous one
EVAL_FINAL_KEY = "eval-final"  # the final evaluation
EXPORT_KEY = "export"  # the published export: its URL in the meta

# ----------------------------------------------------------------- records

PLAN_RECORD = "plan"  # the resolved plan
RECIPE_RECORD = "recipe"  # the recipe text as given, with its name and path
LEASE_HOLDER_RECORD = "lease-holder"  # who holds the lease now, for status
STEP_RECORDS = "steps/"  # + the step name: pending / running / done / failed
START_RECORDS = "starts/"  # + the lease generation: where each start resumed from
PAIR_COUNTS_RECORD = "pair-counts"  # pairs and bad rows of each set of data files, by version stamps (a cache)
INPUT_DIGESTS_RECORD = "input-digests"  # content digests of the input files, by version stamp (a cache)
QUARANTINED_RECORDS = "quarantined/"  # + key and attempt: notes of quarantined states since replaced
TRACKERS_RECORD = "trackers"  # {"run_id": ...}: the experiment tracker run every start of this run continues


def tokenize_key(fingerprint: str) -> str:
    return f"{TOKENIZE_PREFIX}{fingerprint[:20]}"


def tokenize_piece_key(data_key: str, split: str, piece: int, num_pieces: int) -> str:
    return f"{TOKENIZE_PIECE_PREFIX}{data_key}-{split}-{piece:05d}-of-{num_pieces:05d}"


def scored_prefix(name: str) -> str:
    return f"{SCORED_PREFIX}{name}-"


def scored_piece_key(name: str, step: int, piece: int, num_pieces: int) -> str:
    return f"{scored_prefix(name)}{step:010d}-{piece:05d}-of-{num_pieces:05d}"


def epoch_key(epoch: int) -> str:
    return f"{EPOCH_PREFIX}{epoch:05d}"


def checkpoint_key(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{step:010d}"


def history_key(step: int) -> str:
    return f"{HISTORY_PREFIX}{step:010d}"


def step_record(step_name: str) -> str:
    return STEP_RECORDS + step_name.replace("/", "-")


def start_record(generation: int) -> str:
    return f"{START_RECORDS}{generation:012d}"


def quarantined_record(key: str, attempt: str) -> str:
    return f"{QUARANTINED_RECORDS}{key}-{attempt}"
