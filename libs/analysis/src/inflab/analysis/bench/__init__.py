"""The benchmark mode: a function-token data set with ground truth known by construction
(``generate``), imports of ground-truth data sets (``imports``), retrieval metrics
(``metrics``), the text baselines (``baselines``) and the leaderboard (``leaderboard``)."""
