"""``UnifiedFlow``: one Multi-Flow for several product classes (issue 23).

A :class:`multiflow.flow.MultiFlow` whose density depends on the object's class ``k`` (an index
into :attr:`UnifiedFlow.classes`). ``class_conditioning`` chooses how:

* ``"none"``: the plain flow trained on every class (the baseline). The class changes nothing;
  the model cannot tell classes apart, so it cannot identify an object's class.
* ``"embedding"``: a learned class embedding ``e_k`` (``class_embed_dim`` numbers) is broadcast to
  every view and pixel and concatenated to the coupling condition (after the noise channel), so
  every st-network sees it: ``[s, t] = st([x_half ; c_noise ; e_k])``. The flow is a different
  bijection per class; scoring an object under every class costs one flow pass per class.
* ``"latent"``: a class-aware latent. The flow is shared; the latent of class ``k`` is Gaussian with a
  learned mean ``mu[k, v, c]`` and (``latent_scale``) log-scale ``ls[k, v, c]`` per view and channel,
  the same at every position (a per-position latent would cost ``K * V * C * h * w`` numbers and
  break the bundle-size budget). The per-pixel NLL is
  ``(0.5 * sum_c ((z - mu) * exp(-ls))^2 + sum_c ls - logdet) / C``; one flow pass scores an object
  under every class.

The anomaly map is always the per-pixel NLL under the object's class.

How the class reaches the flow: either as ``classes=`` (a ``(B,)`` integer tensor, an int or a
sequence) or *tagged* on the features as one extra channel holding the class index
(:func:`tag_classes`; ``(B, V, C + 1, H, W)``). The tag lets the training loop, validation, the
score computation and DDP (which call ``model(x)``, ``model.noise(x)`` and
``model.nll_of_noised``) carry the class with the features, unchanged: ``self.noise`` strips the tag
and hands it on as the last condition channel, which :meth:`UnifiedFlow.nll_of_noised` reads back.

Class balance: in training mode the per-pixel NLL of an object of class ``k`` is weighted by
``class_weights[k]`` (a buffer, :meth:`UnifiedFlow.set_class_weights`: the mean class count over
the class's count), so every class contributes equally to the loss in expectation. Eval mode
(validation loss, scores) is unweighted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from multiflow.errors import ConfigError, DataError
from multiflow.flow.graph import ViewGraph
from multiflow.flow.model import FlowOutput, MultiFlow
from multiflow.scoring import foreground, pixel_nll

__all__ = ["CLASS_CONDITIONINGS", "UnifiedFlow", "tag_classes"]

CLASS_CONDITIONINGS = ("none", "embedding", "latent")


def tag_classes(features: Tensor, labels: Tensor | Sequence[int] | int) -> Tensor:
    """``features (B, V, C, H, W)`` with the class index of each object appended as channel ``C``
    (``(B, V, C + 1, H, W)``), the form :class:`UnifiedFlow` reads the class from."""
    b, v, _, h, w = features.shape
    lab = torch.as_tensor(labels, dtype=features.dtype, device=features.device).reshape(-1)
    if lab.numel() == 1 and b != 1:
        lab = lab.expand(b)
    if lab.numel() != b:
        raise DataError(f"{lab.numel()} class labels for {b} objects")
    return torch.cat([features, lab[:, None, None, None, None].expand(b, v, 1, h, w)], dim=2)


def _labels_of_plane(plane: Tensor) -> Tensor:
    """Class indices ``(B,)`` from a tag plane ``(B, V, H, W)``; views zeroed as absent read 0, so the
    largest value over the views is the tag (indices are >= 0)."""
    return plane[:, :, 0, 0].amax(dim=1).round().long()


class _TaggedNoise(nn.Module):
    """The noise conditioner of a unified flow: strips the class tag from the features, noises
    them with ``inner`` and returns the tag as the last channel of the condition."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    @property
    def condition_channels(self) -> int:
        return self.inner.condition_channels

    def forward(self, features: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        x, cond = self.inner(features[:, :, :-1], generator)
        tag = features[:, :, -1:].to(x.dtype)
        return x, tag if cond is None else torch.cat([cond, tag], dim=2)


class UnifiedFlow(MultiFlow):
    """Multi-view flow for several classes (module docstring).

    Args:
        channels, graph, **kwargs: as :class:`MultiFlow`.
        classes: the class names, in index order (at least one, unique).
        class_conditioning: one of :data:`CLASS_CONDITIONINGS`.
        class_embed_dim: size of the class embedding (``"embedding"``).
        latent_scale: learn a per-class log-scale besides the mean (``"latent"``).
        latent_init_std: the class means start as independent ``N(0, latent_init_std^2)`` draws
            (seeded), so the classes start apart and the flow must map each class to its own region of
            the latent; 0 starts every class at the origin (the classes then separate only as far as
            the training pulls them apart).
    """

    def __init__(self, channels: int, graph: ViewGraph | dict, *, classes: Sequence[str],
                 class_conditioning: str = "latent", class_embed_dim: int = 8, latent_scale: bool = True,
                 latent_init_std: float = 0.0, **kwargs: Any) -> None:
        classes = [str(c) for c in classes]
        if not classes or len(set(classes)) != len(classes):
            raise ConfigError(f"a unified flow needs at least one class and unique class names, got {classes}")
        if class_conditioning not in CLASS_CONDITIONINGS:
            raise ConfigError(f"unknown class_conditioning {class_conditioning!r}; choose one of "
                              f"{list(CLASS_CONDITIONINGS)}")
        if not float(latent_init_std) >= 0:
            raise ConfigError(f"latent_init_std must be >= 0, got {latent_init_std}")
        if class_conditioning == "embedding" and int(class_embed_dim) < 1:
            raise ConfigError(f"class_embed_dim must be >= 1 for the embedding conditioning, got {class_embed_dim}")
        # read by MultiFlow.__init__ (the couplings' condition channels) through _extra_cond_channels
        self._embed = int(class_embed_dim) if class_conditioning == "embedding" else 0
        super().__init__(channels, graph, **kwargs)
        self.classes = classes
        self.conditioning = class_conditioning
        self._cfg.update(classes=list(classes), class_conditioning=class_conditioning,
                         class_embed_dim=int(class_embed_dim), latent_scale=bool(latent_scale),
                         latent_init_std=float(latent_init_std))
        self.noise = _TaggedNoise(self.noise)
        k, v, c = len(classes), self.graph.n_views, self.channels
        gen = torch.Generator().manual_seed(int(self._cfg["seed"]) + 2)
        self.class_embedding = nn.Parameter(torch.randn(k, self._embed, generator=gen)) if self._embed else None
        self.latent_mean = None
        if class_conditioning == "latent":
            self.latent_mean = nn.Parameter(float(latent_init_std) * torch.randn(k, v, c, generator=gen))
        self.latent_log_scale = (nn.Parameter(torch.zeros(k, v, c))
                                 if class_conditioning == "latent" and latent_scale else None)
        self.register_buffer("class_weights", torch.ones(k))

    def _extra_cond_channels(self) -> int:
        return self._embed

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def can_identify(self) -> bool:
        """Whether the model's density depends on the class (not for ``"none"``)."""
        return self.conditioning != "none"

    def set_class_weights(self, counts: Sequence[int]) -> None:
        """Class-balanced training loss: weight ``mean(counts) / counts[k]`` for class ``k``."""
        n = torch.as_tensor([float(x) for x in counts])
        if n.numel() != self.n_classes or not bool((n > 0).all()):
            raise ConfigError(f"need a positive training count for each of the {self.n_classes} classes, got "
                              f"{list(counts)}")
        self.class_weights.copy_(n.mean() / n)

    # ------------------------------------------------------------------ the class
    def class_index(self, name: str) -> int:
        if name not in self.classes:
            raise DataError(f"class {name!r} is not one of the model's classes {self.classes}")
        return self.classes.index(name)

    def _labels(self, classes: Any, batch: int, device: torch.device) -> Tensor:
        lab = torch.as_tensor(classes, dtype=torch.long, device=device).reshape(-1)
        if lab.numel() == 1 and batch != 1:
            lab = lab.expand(batch)
        if lab.numel() != batch:
            raise DataError(f"{lab.numel()} class labels for {batch} objects")
        if bool((lab < 0).any()) or bool((lab >= self.n_classes).any()):
            raise DataError(f"class labels must be in [0, {self.n_classes}), got {lab.tolist()}")
        return lab

    def _split(self, features: Tensor, classes: Any) -> tuple[Tensor, Tensor]:
        """``(features without a tag, labels (B,))``: the tag channel, or ``classes``."""
        if features.dim() == 5 and features.shape[2] == self.channels + 1:
            lab = _labels_of_plane(features[:, :, -1])
            features = features[:, :, :-1]
            if classes is not None:
                lab = self._labels(classes, features.shape[0], features.device)
            return features, self._labels(lab, features.shape[0], features.device)
        if classes is None:
            if self.conditioning != "none":
                raise DataError(f"a unified flow ({self.conditioning} conditioning) needs the class of each "
                                "object: give classes= or tag the features (tag_classes)")
            classes = 0
        return features, self._labels(classes, features.shape[0], features.device)

    def _cond(self, cond: Tensor | None, labels: Tensor, like: Tensor) -> Tensor | None:
        if not self._embed:
            return cond
        b, v, _, h, w = like.shape
        e = self.class_embedding[labels].to(like.dtype)[:, None, :, None, None].expand(b, v, self._embed, h, w)
        return e if cond is None else torch.cat([cond, e], dim=2)

    def _nll(self, z: Tensor, logdet: Tensor, labels: Tensor) -> Tensor:
        if self.latent_mean is None:
            nll = pixel_nll(z, logdet)
        else:
            nll = self.latent_nll(z, logdet, labels)
        if self.training:
            nll = nll * self.class_weights[labels].to(nll.dtype)[:, None, None, None]
        return nll

    def latent_nll(self, z: Tensor, logdet: Tensor, labels: Tensor) -> Tensor:
        """Per-pixel NLL ``(B, V, H, W)`` of latents ``z`` under the Gaussians of ``labels`` (latent
        conditioning; the plain :func:`pixel_nll` otherwise)."""
        if self.latent_mean is None:
            return pixel_nll(z, logdet)
        mu = self.latent_mean[labels].to(z.dtype)[..., None, None]
        u = z - mu
        if self.latent_log_scale is None:
            return (0.5 * (u * u).sum(dim=2) - logdet) / z.shape[2]
        ls = self.latent_log_scale[labels].to(z.dtype)[..., None, None]
        u = u * torch.exp(-ls)
        return (0.5 * (u * u).sum(dim=2) + ls.sum(dim=2) - logdet) / z.shape[2]

    # ------------------------------------------------------------------ flow
    def _run(self, features: Tensor, labels: Tensor, generator: torch.Generator | None,
             present: Tensor | None, fg: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._check(features, "features")
        present = self._check_present(present, features.shape[0])
        if present is not None:
            p = present.to(features.device)[:, :, None, None, None]
            features = torch.where(p, features, torch.zeros((), dtype=features.dtype, device=features.device))
        gen = generator if generator is not None else self._noise_gen
        x, cond = self.noise.inner(features, gen)
        cond = self._cond(cond, labels, x)
        return self.flow(x, cond, None if present is None else present.to(x.device), fg=fg)

    def forward(self, features: Tensor, generator: torch.Generator | None = None, present: Tensor | None = None,
                classes: Any = None, fg: Tensor | None = None) -> FlowOutput:
        """As :meth:`MultiFlow.forward`; the class comes from the tag channel or ``classes``."""
        features, labels = self._split(features, classes)
        z, logdet = self._run(features, labels, generator, present, fg)
        return FlowOutput(z=z, logdet=logdet, nll=self._nll(z, logdet, labels))

    def nll_of_noised(self, x: Tensor, cond: Tensor | None, present: Tensor | None = None,
                      fg: Tensor | None = None) -> Tensor:
        """As :meth:`MultiFlow.nll_of_noised`, with ``cond`` as :attr:`noise` returns it (its last
        channel the class tag)."""
        if cond is None or cond.shape[2] != self.noise.condition_channels + 1:
            raise DataError("a unified flow's noised features need the condition its noise returned (class tag last)")
        labels = _labels_of_plane(cond[:, :, -1])
        base = cond[:, :, :-1] if cond.shape[2] > 1 else None
        c = self._cond(base, labels, x)
        z, logdet = self.flow(x, c, None if present is None else present.to(x.device), fg=fg)
        return self._nll(z, logdet, labels)

    def inverse(self, z: Tensor, present: Tensor | None = None, classes: Any = None,
                fg: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Eval-mode inverse under the class ``classes`` (needed for the embedding conditioning)."""
        self._check(z, "latents")
        present = self._check_present(present, z.shape[0])
        if classes is None and self._embed:
            raise DataError("the inverse of an embedding-conditioned unified flow needs classes=")
        labels = self._labels(0 if classes is None else classes, z.shape[0], z.device)
        cond = None
        if self.noise.condition_channels:
            b, v, _, hh, ww = z.shape
            cond = z.new_zeros(b, v, 1, hh, ww)
        cond = self._cond(cond, labels, z)
        return self.flow.inverse(z, cond, None if present is None else present.to(z.device), fg=fg)

    @torch.no_grad()
    def anomaly_map(self, features: Tensor, mask: Tensor | None = None, present: Tensor | None = None,
                    classes: Any = None) -> Tensor:
        """As :meth:`MultiFlow.anomaly_map` (the mask is also the fusions' foreground): the per-pixel
        NLL under each object's class."""
        return super().anomaly_map(features, mask, present, classes=classes)

    # ------------------------------------------------------------------ identification
    @staticmethod
    def _fg_mean(nll: Tensor, mask: Tensor | None, present: Tensor | None) -> Tensor:
        w = torch.ones_like(nll) if mask is None else foreground(mask).to(nll.dtype).expand_as(nll)
        if present is not None:
            w = w * present.to(nll.device)[:, :, None, None].to(nll.dtype)
        empty = w.sum(dim=(1, 2, 3)) == 0  # no foreground at all: every present pixel counts (branch-free: exports)
        alt = torch.ones_like(nll) if present is None else present.to(nll.device)[:, :, None, None].to(
            nll.dtype).expand_as(nll)
        w = torch.where(empty[:, None, None, None], alt, w)
        nll = torch.where(w > 0, nll, torch.zeros_like(nll))
        return (nll * w).sum(dim=(1, 2, 3)) / w.sum(dim=(1, 2, 3))

    @torch.no_grad()
    def object_nll(self, features: Tensor, mask: Tensor | None = None, present: Tensor | None = None,
                   classes: Any = None) -> Tensor:
        """Mean foreground NLL ``(B,)`` of each object under its class (eval mode): the statistic of the
        unknown-class check."""
        was_training = self.training
        self.eval()
        try:
            nll = self.forward(features, present=present, classes=classes).nll.float()
        finally:
            self.train(was_training)
        return self._fg_mean(nll, mask, present)

    @torch.no_grad()
    def class_nll(self, features: Tensor, mask: Tensor | None = None, present: Tensor | None = None) -> Tensor:
        """Mean foreground NLL ``(B, K)`` of each object under every class (eval mode); the most likely
        class is the column of the lowest. One flow pass for the latent conditioning, one per class for
        the embedding; the plain flow cannot identify a class (:class:`ConfigError`)."""
        if not self.can_identify:
            raise ConfigError("this unified model has no class conditioning (model.class_conditioning=none): "
                              "every class has the same density, so it cannot identify an object's class; "
                              "give the class")
        if features.shape[2] == self.channels + 1:
            features = features[:, :, :-1]
        b = features.shape[0]
        was_training = self.training
        self.eval()
        try:
            out = []
            if self.latent_mean is not None:
                zeros = torch.zeros(b, dtype=torch.long, device=features.device)
                z, logdet = self._run(features, zeros, None, present)
                z, logdet = z.float(), logdet.float()
                for k in range(self.n_classes):
                    nll = self.latent_nll(z, logdet, torch.full_like(zeros, k))
                    out.append(self._fg_mean(nll, mask, present))
            else:
                for k in range(self.n_classes):
                    lab = torch.full((b,), k, dtype=torch.long, device=features.device)
                    z, logdet = self._run(features, lab, None, present)
                    out.append(self._fg_mean(pixel_nll(z.float(), logdet.float()), mask, present))
        finally:
            self.train(was_training)
        return torch.stack(out, dim=1)
