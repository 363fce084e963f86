"""labkit at scale: many runs side by side or in worker processes (sweep, workers), one run over several
GPUs under torchrun (distributed). The core never imports this package; it plugs into the loop
through labkit.train.Hooks."""
