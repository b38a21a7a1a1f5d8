"""The no-Docker compose runner, the demo and the network-namespace helpers the tests share.

They run from the checkout (`make demo`, `make up`, the test suite) and are not part of the installed
package: a node never imports them.
"""
