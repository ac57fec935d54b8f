"""The Best-of-N demo that shows an effect: a synthetic visual counting task (``task``), a tiny policy
fine-tuned on it and a tiny PRM fine-tuned on Monte-Carlo step labels from that policy (``train``),
built once on CPU and cached (``build``). Nothing is downloaded."""
