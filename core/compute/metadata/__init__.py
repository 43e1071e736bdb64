"""The guest metadata service and the config drive, in Nova's formats.

What a guest reads at ``http://169.254.169.254/`` (or from a ``config-2``
labelled ISO) is built here from one typed value, :class:`model.InstanceDescription`,
which the hypervisor agent fills in from the compute and network APIs. Nothing
in this package asks another service anything: it is handed what it serves.

* :mod:`model`: the typed input and its JSON form (the file the hypervisor
  agent writes for the service to read).
* :mod:`openstack`: ``openstack/<version>/meta_data.json``, ``network_data.json``,
  ``vendor_data.json``, ``vendor_data2.json``, ``user_data``, version listings.
* :mod:`ec2`: the EC2-style ``<version>/meta-data/`` tree and ``user-data``.
* :mod:`paths`: one path of the service resolved to a body and a content type.
* :mod:`lookup`: which instance a request is for, by (network id, source IP).
* :mod:`app`: the WSGI app; :mod:`listener`: a socket bound in a network namespace.
* :mod:`configdrive`: the ISO9660 image.
"""
