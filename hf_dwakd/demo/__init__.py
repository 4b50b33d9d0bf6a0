"""A first run on a laptop: two real models with different tokenizers, distilled on a bundled Dolly slice."""
