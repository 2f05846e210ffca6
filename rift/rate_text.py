"""How a learning rate is written in messages, curve names and tables: ``:g``'s way (``0.05``,
``10``, ``1e-05``) where that is the rate itself, else whole (``0.0010000001``). ``:g`` keeps 6
significant digits, so two rates of a grid could read alike: two candidates' curves carried one
name, and a message about one could name the other's rate. Torch-free (the report page uses it)."""


def rate_text(lr: float) -> str:
    """``lr`` written as short as it can be without standing for another rate."""
    text = f"{lr:g}"
    return text if float(text) == lr else repr(float(lr))
