"""all-MiniLM-L6-v2's shape and the measurement minimums, importable without torch.

Config classes check their ranges against these; the modules that run the model use the same
names.
"""

NUM_LAYERS = 6
NUM_HEADS = 12
HEAD_DIM = 32
#: Positions of the model ([CLS] and [SEP] included).
MAX_TOKENS = 512
#: Pairs of the retrieval check by default and at least: one query moves top-1 by 0.5%.
MIN_PAIRS = 200
#: Fewest timed (exact, variant) rounds of a paired timing: with fewer the IQR of a whole-model
#: time on a shared machine says little (3 rounds gave IQRs up to 76% of the median).
MIN_PAIRED_REPEATS = 10
