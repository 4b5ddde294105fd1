"""The extension system: the host that loads extension folders and the public facade they import.

Extensions import only :mod:`webui.extensions.api`. The application builds one
:class:`~webui.extensions.host.ExtensionHost` per context; the engine, UI and API read hooks, wrappers,
routes, settings and UI sections from it.
"""
