"""Scheduling shared by the master and its relays: who holds which data items
(`allocation`: the water-filling allocator, item keys and their wire groups) and how long
each client gets to work (`latency`: measured lag, work time, benching). Pure state
machines: no I/O, no clock of their own."""
