"""Learning plug-ins: a learning algorithm (`algorithms.ALGORITHMS`: what a work order asks
of a trainer and how the answers become a step), an aggregation rule
(`aggregation.AGGREGATORS`: how the results of an iteration combine) and the accumulator
that holds an iteration's results between the two. The engine only calls them."""
