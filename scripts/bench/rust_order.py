"""The order in which `recthinker sft` and `recthinker rl` visit their examples, for the
Python peers of the benchmarks: `batch_indices` mirrors trainer::train_common::batch_indices
(a per-epoch shuffle with rand 0.9's StdRng = ChaCha12, seeded by `seed_from_u64`), so a peer
can train on exactly the conversations, or roll out exactly the episodes, that our step does.

    python scripts/bench/rust_order.py    # checks itself against values printed by the Rust code

Which step reads what: SFT step s takes batch_indices(len(examples), seed, s, batch_size)
of the train file's non-empty lines; GRPO step s takes batch_indices(len(train episodes),
seed ^ 0x9E37, s, episodes_per_step) of the train split (`train:all:INDEX`).
"""

M32 = 0xFFFFFFFF
M64 = 0xFFFFFFFFFFFFFFFF


def _rotl(x, r):
    return ((x << r) | (x >> (32 - r))) & M32


def _chacha_block(key, counter, rounds=12):
    s = [0x61707865, 0x3320646E, 0x79622D32, 0x6B206574, *key, counter & M32, counter >> 32, 0, 0]
    x = s[:]

    def qr(a, b, c, d):
        x[a] = (x[a] + x[b]) & M32
        x[d] = _rotl(x[d] ^ x[a], 16)
        x[c] = (x[c] + x[d]) & M32
        x[b] = _rotl(x[b] ^ x[c], 12)
        x[a] = (x[a] + x[b]) & M32
        x[d] = _rotl(x[d] ^ x[a], 8)
        x[c] = (x[c] + x[d]) & M32
        x[b] = _rotl(x[b] ^ x[c], 7)

    for _ in range(rounds // 2):
        qr(0, 4, 8, 12)
        qr(1, 5, 9, 13)
        qr(2, 6, 10, 14)
        qr(3, 7, 11, 15)
        qr(0, 5, 10, 15)
        qr(1, 6, 11, 12)
        qr(2, 7, 8, 13)
        qr(3, 4, 9, 14)
    return [(a + b) & M32 for a, b in zip(x, s)]


class StdRng:
    """rand 0.9 `StdRng::seed_from_u64(state)` (ChaCha12, PCG32 key expansion); u32 output only."""

    def __init__(self, state):
        key = []
        for _ in range(8):
            state = (state * 6364136223846793005 + 11634580027462260723) & M64
            xs = (((state >> 18) ^ state) >> 27) & M32
            rot = state >> 59
            key.append(((xs >> rot) | (xs << (32 - rot))) & M32 if rot else xs)
        self.key, self.counter, self.buf = key, 0, []

    def next_u32(self):
        if not self.buf:
            self.buf = _chacha_block(self.key, self.counter)
            self.counter += 1
        return self.buf.pop(0)


def _below(rng, bound):
    """rand 0.9 `random_range(..bound)` for u32 (Canon's method, the default biased variant)."""
    prod = rng.next_u32() * bound
    result, lo = prod >> 32, prod & M32
    if lo > ((-bound) & M32):
        new_hi = (rng.next_u32() * bound) >> 32
        result += 1 if lo + new_hi > M32 else 0
    return result


def shuffle(v, rng):
    """rand 0.9 `SliceRandom::shuffle` (partial_shuffle over the whole slice, IncreasingUniform)."""
    if len(v) <= 1:
        return
    n, chunk, remaining = 0, 0, 1  # IncreasingUniform::new(rng, 0)
    for i in range(len(v)):
        next_n = n + 1
        if remaining == 0:
            bound, cur = next_n, next_n + 1
            while bound * cur <= M32:
                bound *= cur
                cur += 1
            chunk = _below(rng, bound)
            remaining = cur - next_n
        remaining -= 1
        if remaining == 0:
            idx = chunk
        else:
            idx, chunk = chunk % next_n, chunk // next_n
        n = next_n
        v[i], v[idx] = v[idx], v[i]


def batch_indices(n, seed, step, batch):
    """trainer::train_common::batch_indices: the example indices of step `step`."""
    out, epochs = [], {}
    for j in range(batch):
        epoch, k = divmod(step * batch + j, n)
        if epoch not in epochs:
            order = list(range(n))
            shuffle(order, StdRng((seed * 1_000_003 + epoch) & M64))
            epochs[epoch] = order
        out.append(epochs[epoch][k])
    return out


# (n, seed, step, batch) -> indices, as the Rust function printed them (rand 0.9.5).
_CHECKS = [
    ((5000, 0x9E37, 0, 4), [4402, 798, 2667, 4294]),
    ((5000, 0x9E37, 1, 4), [3156, 4514, 474, 1723]),
    ((313, 0, 0, 4), [252, 80, 7, 164]),
    ((313, 0, 78, 4), [193, 161, 155, 282]),
    ((7, 3, 5, 4), [2, 0, 5, 2]),
    ((40000, 12345, 2, 8), [38597, 26192, 34037, 23591, 19507, 35908, 34364, 36215]),
    ((2, 0, 0, 2), [1, 0]),
]


def self_check():
    for args, want in _CHECKS:
        got = batch_indices(*args)
        if got != want:
            raise AssertionError(f"batch_indices{args} = {got}, the Rust code gives {want}")


if __name__ == "__main__":
    self_check()
    print("rust_order: batch_indices matches the Rust values")
