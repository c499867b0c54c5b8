import NetshapeCLI

// A CNI runtime runs plugins with CNI_COMMAND set (and often under the plugin's own name).
if Netshape.isCNIInvocation {
    Netshape.runCNI()
} else {
    await Netshape.runMain()
}
