"""Extra samplers: iPNDM, DEIS, Res Multistep and ER SDE, shipped as an extension of the web UI."""
