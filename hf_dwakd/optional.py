"""Optional dependencies: fail early, naming the extra that installs them."""


def require_matplotlib():
    """Drawing the alignment (`hf_dwakd.inspection`) needs matplotlib, the extra `plot`."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ImportError(
            "Drawing the alignment needs matplotlib: install it with `pip install hf-dwakd[plot]`."
        ) from None
