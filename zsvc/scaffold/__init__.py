"""``zsvc create-service``: generate task services that run under zsvc as generated.

A pure core decides everything and an I/O shell writes it:

- :mod:`.model`: what to create (:class:`Request`) and the rules its values obey;
- :mod:`.flags` and :mod:`.metaconf`: the two inputs (the command's flags, a
  ``MetaServiceConf`` file checked against ``metaconf.xsd``) as a :class:`Request`;
- :mod:`.templates`: the Python files; :mod:`.contextxml`: the context file (lxml);
- :mod:`.plan`: every file's exact new bytes, or every reason to refuse;
- :mod:`.write`: reads the existing files and writes a plan all or nothing.
"""
