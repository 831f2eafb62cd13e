"""The board link, one feature: everything that carries requests between a host and a board.

- :mod:`.protocol`: the wire format (frame layout, message types, error codes, CRC), shared by
  every other part so they cannot disagree.
- :mod:`.uart`: the UART receiver and transmitter gateware.
- :mod:`.receiver`, :mod:`.transmitter`: the protocol engine's halves (requests in, replies
  out).
- :mod:`.gateware`: the protocol engine and the accelerator behind it.
"""
