"""The network, its export and int8 version, preprocessing, loading an export."""
