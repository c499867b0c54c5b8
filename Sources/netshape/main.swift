import NetshapeCLI

Netshape.runMain()
