/* The benchmark floor's /init: the least a guest can do before powering off.
 * With reboot=t and QEMU's -no-reboot, the reset ends QEMU, so booting this
 * measures QEMU start + kernel boot + exit with nothing of capsem's. */
#include <sys/reboot.h>
#include <unistd.h>

int main(void)
{
	reboot(RB_AUTOBOOT);
	for (;;)
		pause();
}
