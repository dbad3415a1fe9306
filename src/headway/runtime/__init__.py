"""How models run, for any model: device mechanics and timing, the stream-owning worker pool,
cutting a model into jobs, the multi-model runners and the engines. Imports no model and no
transform; import the modules themselves (``headway.runtime.device``, ``.engines`` …)."""
