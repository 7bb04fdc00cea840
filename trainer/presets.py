"""Model sizes: the paper's grid (Table 5) by name, plus tiny shapes that train on a CPU."""

PRESETS: dict[str, dict[str, int]] = {
    # CPU-sized shapes for tests, the quickstart and benchmarks here.
    "nano": {"dim": 32, "n_layers": 2, "n_heads": 2},
    "tiny": {"dim": 64, "n_layers": 2, "n_heads": 4},
    "small": {"dim": 128, "n_layers": 4, "n_heads": 4},
    "mini": {"dim": 256, "n_layers": 6, "n_heads": 8},
    # The paper's quickstart sizes (Table 5): 144.8M (AR) and 416.9M (MDM) with GPT-2's padded vocab.
    "140M": {"dim": 768, "n_layers": 15, "n_heads": 12},
    "425M": {"dim": 1280, "n_layers": 18, "n_heads": 10},
}
