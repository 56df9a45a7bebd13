"""Kinds without a sampling loop: their bundles are used through their graphs (`Deployment.infer`, `deploykit run`)."""

from __future__ import annotations

from dataclasses import dataclass

from .kinds import ImageLayout, LoopConfig, LoopKind, register


@dataclass(frozen=True, kw_only=True)
class ClassifierConfig(LoopConfig):
    """input -> logits."""

    kind = "classifier"


@dataclass(frozen=True, kw_only=True)
class SegmenterConfig(LoopConfig):
    """image -> per-pixel logits."""

    kind = "segmenter"


@dataclass(frozen=True, kw_only=True)
class AutoencoderConfig(LoopConfig):
    """encoder and decoder graphs."""

    kind = "autoencoder"


@dataclass(frozen=True, kw_only=True)
class Image2ImageConfig(ImageLayout):
    """image -> translated image."""

    kind = "image2image"


@dataclass(frozen=True, kw_only=True)
class SequenceConfig(LoopConfig):
    """A bidirectional recurrent model over whole sequences."""

    kind = "sequence"
    batch_first: bool


for _config, _title in ((ClassifierConfig, "classifier"), (SegmenterConfig, "segmentation"),
                        (AutoencoderConfig, "autoencoder"), (Image2ImageConfig, "image-to-image")):
    register(LoopKind(_config, _title, "graphs"))
register(LoopKind(SequenceConfig, "bidirectional RNN", "graphs",
                  hint="A bidirectional rnn needs the whole sequence: run its `sequence` graph."))
