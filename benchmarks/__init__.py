"""Speed and quality benchmarks (not tests); each prints or writes its ratios."""
