"""Mining: every unit's top-k dataset images in one pass, as a resumable job (Zeiler & Fergus Fig. 2).

``vizkit.methods.patches.top_patches`` ranks the dataset again for each channel; mining runs each
image once and keeps, for every channel of every chosen layer, its k strongest images, in memory
proportional to channels × k. The result is an index on disk the app reads.

- ``sources.py``: what is mined (a folder, scenes, an image array): the item order, decoding
  through ``load_image``'s checks, content hashes; items are read in chunks (one forward batch).
- ``topk.py``: one chunk's forward pass and the running top-k per channel; both engines use it.
- ``engine.py``: ``mine()``: the local engine (a torch ``DataLoader`` decodes chunks in worker
  processes, the model runs batched on its device), checkpoints, resuming, progress and stop.
- ``ray_engine.py``: the same chunks through a Ray Data pipeline (decode tasks, one
  model-holding actor per worker/GPU), merged on the driver; Ray is optional.
- ``index.py``: the Parquet index (schema, atomic writes, reading, matching a model), and the
  checkpoint files.

What "strongest" means is ``top_patches``'s ranking, exactly: an image's response for a channel
is that channel's maximum over positions (the layer's output at its first call in the forward),
at the first position in row-major order that reaches it; one entry per image; images rank by
response, highest first, ties by dataset order.
"""
