"""The Greengrass v2 component: IPC configuration, validated hot model swap, commands, status."""
