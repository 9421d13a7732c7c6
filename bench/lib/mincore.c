/*
 * Which pages of each file are in the page cache (mincore(2)): the floor bench's view of what a process touched,
 * mapped pages included, which no read trace sees. Node has no mmap, hence this small tool (vmtouch does the same,
 * but prints a scaled picture, not page numbers). Built by bench/floor.ts with cc; not part of the product.
 *
 * stdin: NUL-terminated paths. stdout, for each regular non-empty file with resident pages:
 *   "<first>-<end>,<first>-<end>...\t<path>\0"   (page ranges of the system page size, end exclusive)
 * exit 0, or 1 with a message on stderr when a file cannot be examined.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

int main(void) {
  long page = sysconf(_SC_PAGESIZE);
  char *path = NULL;
  size_t cap = 0;
  ssize_t len;
  while ((len = getdelim(&path, &cap, '\0', stdin)) > 0) {
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) { fprintf(stderr, "%s: %s\n", path, strerror(errno)); return 1; }
    struct stat st;
    if (fstat(fd, &st) != 0) { fprintf(stderr, "%s: %s\n", path, strerror(errno)); return 1; }
    if (!S_ISREG(st.st_mode) || st.st_size == 0) { close(fd); continue; }
    size_t pages = (size_t)((st.st_size + page - 1) / page);
    /* Mapping a file faults nothing in: mincore reports the page cache as it was. */
    void *m = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED) { fprintf(stderr, "%s: mmap: %s\n", path, strerror(errno)); return 1; }
    unsigned char *vec = malloc(pages);
    if (!vec || mincore(m, (size_t)st.st_size, vec) != 0) { fprintf(stderr, "%s: mincore: %s\n", path, strerror(errno)); return 1; }
    int any = 0;
    for (size_t i = 0; i < pages;) {
      if (!(vec[i] & 1)) { i++; continue; }
      size_t j = i;
      while (j < pages && (vec[j] & 1)) j++;
      printf("%s%zu-%zu", any ? "," : "", i, j);
      any = 1;
      i = j;
    }
    if (any) { printf("\t%s", path); putchar('\0'); }
    free(vec);
    munmap(m, (size_t)st.st_size);
    close(fd);
  }
  free(path);
  return 0;
}
