# No Python-level names: the plain parser is cimported by the connection (_protocol.pyx).
