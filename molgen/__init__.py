"""molgen: a molecular design toolkit built around one DiScoFormer (score + density heads)."""

__version__ = "0.1.0"


def load(path=None, device: str = "cpu", base=None):
    """The bundled pretrained QM9 model, or the checkpoint or adapter file at ``path`` (see :mod:`molgen.api`)."""
    from molgen.api import load as _load

    return _load(path, device, base)


def adapt(molecules, output, **options):
    """A molecule file as a new distribution of a model, written to ``output`` (see :func:`molgen.api.adapt`)."""
    from molgen.api import adapt as _adapt

    return _adapt(molecules, output, **options)


def to_pyg(smiles, model=None):
    """SMILES as torch-geometric graphs in a model's vocabulary (the bundled one by default), for your
    own GNN or for ``model.score`` (see :meth:`molgen.api.Model.to_pyg`)."""
    from molgen.api import load as _load

    return (model or _load()).to_pyg(smiles)


def filter_frame(molecules, model=None, **options):
    """Density filter plus RDKit checks on a DataFrame (see :func:`molgen.api.filter_frame`)."""
    from molgen.api import filter_frame as _filter_frame

    return _filter_frame(molecules, model, **options)


def screen_ray(source, output=None, **options):
    """Score (with ``filter_spec``: filter) files or a ``ray.data.Dataset`` on a Ray cluster; needs
    ``pip install "molgen[ray]"`` (see :func:`molgen.screen_ray.screen_ray`)."""
    from molgen.screen_ray import screen_ray as _screen_ray

    return _screen_ray(source, output, **options)
